"""pytest's own ``pytester`` fixture, for the test that runs the crosscheck plugin, and short
ASCII test ids for parameters that are long or non-ASCII strings."""
import re

pytest_plugins = ["pytester"]

_LONG = 40          # characters of a string parameter that pytest's id shows as is


def pytest_make_parametrize_id(config, val, argname):
    """An id for a str or bytes parameter that is long (an expected error message) or not
    printable ASCII (a Unicode sample, raw bytes): its head up to the first ": " (the argument
    a message names) or its first characters, without regex backslashes, each character that
    is not printable ASCII written as its code point (U+00E9), so
    that ids can be typed after ``-k`` and node ids stay short. None leaves pytest's own id;
    pytest numbers ids that come out equal."""
    if not isinstance(val, (str, bytes)):
        return None
    text = val.decode("latin-1") if isinstance(val, bytes) else val
    if len(text) <= _LONG and text.isascii() and text.isprintable():
        return None
    head = text.split(": ", 1)[0] if ": " in text[:_LONG] else text[:24]
    return "".join(c if c.isascii() and c.isprintable() else f"U+{ord(c):04X}"
                   for c in head.replace("\\", "")) or f"{argname}-empty"
