"""All-or-nothing file writing: no half-written file ever carries a real name.

Every file goes to a hidden temporary name in its destination folder first; only when all of a
group are written are they renamed into place, so an interrupted write leaves the previous
files (or none) behind.
"""

import contextlib
import os

import numpy as np

TEMPORARY_MARK = ".tmp-"


def temporary_name(path):
    """A hidden name next to `path` for writing it before the rename."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TEMPORARY_MARK}{os.getpid()}")


def temporary_target(name):
    """The file name that the temporary file `name` (of `temporary_name`) was to become, or
    None when `name` is not such a temporary name."""
    target, mark, pid = name[1:].rpartition(TEMPORARY_MARK)
    return target if name.startswith(".") and mark and target and pid.isdigit() else None


def _write_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_npy(path, array):
    with open(path, "wb") as file:
        np.save(file, array)


def _write_text(path, text):
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write(text)


def _writer(path, content):
    if isinstance(content, str):
        return _write_text
    return {".png": _write_png, ".npy": _write_npy}[os.path.splitext(path)[1].lower()]


def write_files(items):
    """Writes [(path, content)] all-or-nothing, renaming in the given order. Content is a str
    (text), or an array for .png (uint8 image) and .npy (any array). On an error the temporary
    files are removed and the error re-raised."""
    temporaries = []
    try:
        for path, content in items:
            temporary = temporary_name(path)
            temporaries.append(temporary)
            _writer(path, content)(temporary, content)
    except BaseException:
        for temporary in temporaries:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
        raise
    for (path, _), temporary in zip(items, temporaries):
        os.replace(temporary, path)


def write_text(path, text):
    """Writes one text file atomically."""
    write_files([(path, text)])
