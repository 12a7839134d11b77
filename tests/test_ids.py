import pytest

from opendo.core.ids import NamespaceKey


def test_named_ids_are_deterministic_per_namespace() -> None:
    chat, other = NamespaceKey("Chat"), NamespaceKey("Other")
    a1, a2 = chat.from_name("lobby"), NamespaceKey("Chat").from_name("lobby")
    assert a1 == a2 and hash(a1) == hash(a2) and a1.equals(a2)
    assert str(a1) == str(a2)
    assert chat.from_name("lobby") != chat.from_name("lobby2")
    assert other.from_name("lobby") != a1


def test_id_prints_as_64_hex_and_knows_its_name() -> None:
    key = NamespaceKey("Chat")
    named = key.from_name("room-1")
    assert len(str(named)) == 64 and int(str(named), 16) >= 0
    assert str(named) == str(named).lower()
    assert named.name == "room-1"
    assert key.new_unique().name is None


def test_unique_ids_differ_and_never_collide_with_named_ones() -> None:
    key = NamespaceKey("Chat")
    ids = {key.new_unique() for _ in range(1000)}
    assert len(ids) == 1000
    # The top bit of the first byte tells them apart.
    assert all(int(str(i)[:2], 16) & 0x80 for i in ids)
    assert not int(str(key.from_name("x"))[:2], 16) & 0x80


def test_id_from_string_round_trips() -> None:
    key = NamespaceKey("Chat")
    for original in (key.from_name("a"), key.new_unique()):
        parsed = key.from_string(str(original))
        assert parsed == original
        assert parsed.name is None  # a string carries no name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected 64 hex digits"),
        ("abc", "expected 64 hex digits"),
        ("z" * 64, "expected 64 hex digits"),
        ("0" * 64, "does not belong to namespace 'Chat'"),
    ],
)
def test_id_from_string_rejects_malformed_ids(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NamespaceKey("Chat").from_string(text)


def test_id_from_string_rejects_another_namespaces_id() -> None:
    foreign = NamespaceKey("Other").from_name("lobby")
    with pytest.raises(ValueError, match="does not belong to namespace 'Chat'"):
        NamespaceKey("Chat").from_string(str(foreign))


def test_id_from_name_needs_a_string() -> None:
    with pytest.raises(TypeError, match="expects a str, got int"):
        NamespaceKey("Chat").from_name(42)  # type: ignore[arg-type]
