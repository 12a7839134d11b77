import opendo


def test_all_is_sorted_and_importable() -> None:
    assert opendo.__all__ == sorted(opendo.__all__)
    for name in opendo.__all__:
        assert getattr(opendo, name) is not None, name


def test_public_names_are_not_private_modules() -> None:
    for name in opendo.__all__:
        assert not name.startswith("_")
    assert {"DurableObject", "WorkerEntrypoint", "Request", "Response", "WebSocketPair"} <= set(
        opendo.__all__
    )
