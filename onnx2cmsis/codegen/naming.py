"""Turn untrusted model text into safe C identifiers and comments."""

from __future__ import annotations

import re

C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "_Bool _Complex _Imaginary".split()
)


def c_identifier(text: str, fallback: str = "layer", max_len: int = 32) -> str:
    """[A-Za-z0-9_] only, not starting with a digit, never a keyword; may still need a unique prefix.
    A name longer than max_len is cut after a whole word (at an underscore) where one is near."""
    ident = re.sub(r"[^A-Za-z0-9_]+", "_", text.encode("ascii", "ignore").decode()).strip("_")
    ident = re.sub(r"_+", "_", ident)
    if len(ident) > max_len:
        cut = ident.rfind("_", 0, max_len + 1)
        ident = ident[:cut] if cut >= max_len // 2 else ident[:max_len]
    ident = ident.rstrip("_") or fallback
    if ident[0].isdigit():
        ident = "_" + ident
    if ident in C_KEYWORDS:
        ident += "_"
    return ident


def layer_names(names: list[str]) -> list[str]:
    """The part of each node name that tells the layers apart: exporters prefix every name with the
    same scope (Keras' "functional_11_1/..."), which says nothing and would fill the identifier."""
    parts = [n.split("/") for n in names]
    common = 0
    if len(parts) > 1 and all(len(p) > 1 for p in parts):
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
    return ["/".join(p[common:]) for p in parts]


def is_c_identifier(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text)) and text not in C_KEYWORDS


def c_comment(text: str, max_len: int = 80) -> str:
    """Printable ASCII that cannot close a comment, continue a line or start a directive."""
    safe = text.encode("ascii", "backslashreplace").decode()
    safe = "".join(ch if ch.isprintable() else " " for ch in safe)
    safe = safe.replace("\\", "/").replace("*/", "* /").replace("/*", "/ *")
    while "??" in safe:  # trigraphs (??/ is a backslash under -std=c99)
        safe = safe.replace("??", "? ?")
    return safe[:max_len]
