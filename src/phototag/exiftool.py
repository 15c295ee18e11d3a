"""One exiftool process per run: a small wrapper of exiftool's ``-stay_open True -@ -`` batch mode.

Starting exiftool (Perl) costs ~0.2 s, so reading or writing the metadata of thousands of photos one process per
photo would take minutes; a :class:`ExifTool` keeps one process and sends it one command per batch of files.

File names are always passed as absolute paths, so a photo named ``-beach.jpg`` can never be read as an option
(in batch mode ``--`` cannot be used: it would also turn the ``-execute`` that ends each command into a file
name).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence

#: Where exiftool comes from, for the error when it is missing.
INSTALL_HINT = (
    "install exiftool (Debian/Ubuntu: apt-get install libimage-exiftool-perl, or bash "
    "scripts/install_system_tools.sh; macOS: brew install exiftool)"
)


class ExifToolError(RuntimeError):
    """exiftool is missing, died, or refused a command."""


def exiftool_path() -> str:
    """The ``exiftool`` executable (``$PHOTOTAG_EXIFTOOL`` overrides the name).

    Raises:
        RuntimeError: exiftool is not installed (says how to install it).
    """
    found = shutil.which(os.environ.get("PHOTOTAG_EXIFTOOL", "exiftool"))
    if found is None:
        raise RuntimeError(f"Reading or writing photo metadata needs exiftool: {INSTALL_HINT}.")
    return found


def safe_file_arg(path: str | os.PathLike) -> str:
    """``path`` as an exiftool argument that cannot be mistaken for an option (absolute, one line).

    Raises:
        ValueError: The name holds a line break (exiftool's argument file is one argument per line).
    """
    text = os.path.abspath(os.fspath(path))
    if "\n" in text or "\r" in text:
        raise ValueError(f"{path!r}: file names with line breaks cannot be passed to exiftool; rename the file.")
    return text


class ExifTool:
    """A running ``exiftool -stay_open True -@ -``; use as a context manager.

    Example:
        >>> with ExifTool() as et:  # doctest: +SKIP
        ...     et.read_json(["photo.jpg"], ["-XMP-dc:Subject"])
    """

    def __init__(self, executable: str | None = None):
        self.executable = executable or exiftool_path()
        self._process: subprocess.Popen | None = None
        self._count = 0

    def __enter__(self) -> ExifTool:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        if self._process is not None:
            return
        self._process = subprocess.Popen(
            [self.executable, "-stay_open", "True", "-@", "-", "-common_args", "-charset", "filename=utf8"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.write(b"-stay_open\nFalse\n")
            process.stdin.flush()
            process.communicate(timeout=10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    def execute(self, args: Sequence[str]) -> tuple[bytes, str]:
        """Run one command (``args`` = options and file names, one per item); returns ``(stdout, stderr)``.

        Raises:
            ExifToolError: The process died.
        """
        self.start()
        self._count += 1
        marker = f"{{ready{self._count}}}"
        lines = [*args, "-echo4", marker, f"-execute{self._count}"]
        for arg in lines:
            if "\n" in arg:
                raise ValueError(f"exiftool argument {arg!r} holds a line break.")
        process = self._process
        try:
            process.stdin.write(("\n".join(lines) + "\n").encode("utf-8"))
            process.stdin.flush()
            stdout = _read_until(process.stdout, marker.encode())
            stderr = _read_until(process.stderr, marker.encode())
        except (OSError, EOFError) as err:
            self._process = None
            process.kill()
            raise ExifToolError(f"exiftool stopped unexpectedly ({err}).") from None
        return stdout, stderr.decode("utf-8", "replace")

    def read_json(
        self, files: Sequence[str | os.PathLike], options: Sequence[str]
    ) -> tuple[dict[str, dict], dict[str, str]]:
        """``exiftool -j OPTIONS FILES``, keyed by the absolute path of each file.

        Returns:
            ``(records, errors)``: one dict of tags per file exiftool read, and ``{path: message}`` for the files it
            could not read or parse (missing, unreadable, not an image it knows).
        """
        names = [safe_file_arg(f) for f in files]
        stdout, stderr = self.execute(["-j", *options, *names])
        text = stdout.decode("utf-8", "replace").strip()
        records = {record["SourceFile"]: record for record in (json.loads(text) if text else [])}
        errors: dict[str, str] = {}
        wanted = set(names)
        for line in stderr.splitlines():
            match = re.match(r"^Error: (.*) - (.+)$", line)
            if match and match.group(2) in wanted:
                errors[match.group(2)] = match.group(1)
                records.pop(match.group(2), None)
        return records, errors

    def write(self, file: str | os.PathLike, options: Sequence[str]) -> None:
        """``exiftool -overwrite_original OPTIONS FILE`` (exiftool writes a temporary file and renames it).

        Raises:
            ExifToolError: exiftool reported an error (message names the file).
        """
        name = safe_file_arg(file)
        stdout, stderr = self.execute(["-q", "-overwrite_original", *options, name])
        errors = [line for line in stderr.splitlines() if line.startswith("Error")]
        if errors:
            raise ExifToolError(f"{file}: exiftool could not write it ({errors[-1]}).")


def _read_until(stream, marker: bytes) -> bytes:
    """Read ``stream`` up to the line ``marker``; returns what came before it."""
    data = bytearray()
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(1)
        if not chunk:
            raise EOFError("end of output")
        data += chunk
        end = data.rfind(marker)
        if end != -1 and data.endswith(b"\n", end):
            return bytes(data[:end])


def as_list(value) -> list[str]:
    """An exiftool JSON value as a list of strings (one keyword comes as a string, ``2019`` as a number)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    return [text] if text else []


__all__ = ["ExifTool", "ExifToolError", "as_list", "exiftool_path", "safe_file_arg"]
