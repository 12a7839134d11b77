"""Many opendo processes on one machine, serving one persist directory: each object lives in
the process that holds its lock, and the others forward its events there."""
