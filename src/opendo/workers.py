"""Cloudflare Python Workers compatibility: ``from workers import DurableObject, …``."""
