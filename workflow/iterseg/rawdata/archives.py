"""Snapshot content that arrives as ``.tar`` / ``.tar.gz`` archives, unpacked safely.

Archives are unpacked into the iteration's procdata folder (rawdata stays read-only). Before
anything is written every member is checked: plain files and folders only (no symbolic or hard
links, devices or FIFOs: a snapshot never needs them, and tarfile's ``data`` filter alone has a
record of link bypasses on Python 3.11), relative paths without ``..``, and bounded total size
and member count. Extraction then still runs with the ``data`` filter, into a temporary folder
that is only renamed into place when every member was written. A truncated or corrupt archive
is named with its cause.
"""

from __future__ import annotations

import errno
import logging
import lzma
import shutil
import tarfile
import zlib
from pathlib import Path

from iterseg.errors import SnapshotError
from iterseg.paths import partial_path

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_BYTES = 50 * 2**30  # a generous bound on what one snapshot's archives may unpack to
MAX_MEMBERS = 500_000


def find_archives(snapshot: Path) -> list[Path]:
    """Archives anywhere in the snapshot, in name order."""
    return sorted(p for p in snapshot.rglob("*") if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))


def _check(archive: Path, members: list[tarfile.TarInfo], max_bytes: int) -> None:
    if len(members) > MAX_MEMBERS:
        raise SnapshotError(
            f"{archive}: {len(members)} members, more than {MAX_MEMBERS}; unpack it yourself."
        )
    links = [m.name for m in members if not (m.isfile() or m.isdir())]
    if links:
        kinds = sorted(
            {
                "symbolic link" if m.issym() else "hard link" if m.islnk() else "device or FIFO"
                for m in members
                if m.name in links[:20]
            }
        )
        raise SnapshotError(
            f"{archive}: holds {len(links)} member(s) that are not plain files or folders "
            f"({', '.join(kinds)}: {links[:3]}); snapshots need none: "
            "repack it with the files themselves (tar -h follows links)."
        )
    parents = [m.name for m in members if ".." in Path(m.name).parts]
    if parents:
        raise SnapshotError(
            f"{archive}: member path(s) with '..' {parents[:3]}; repack with paths inside the archive."
        )
    absolute = [m.name for m in members if m.name.startswith(("/", "\\")) or ":" in m.name.split("/")[0]]
    if absolute:
        # the data filter would quietly strip the leading "/": refuse instead, the archive is odd
        raise SnapshotError(f"{archive}: absolute member path(s) {absolute[:3]}; repack with relative paths.")
    total = sum(m.size for m in members if m.isfile())
    if total > max_bytes:
        raise SnapshotError(
            f"{archive}: would unpack to {total / 2**30:.1f} GiB, more than the {max_bytes / 2**30:.1f} GiB "
            "allowed; unpack it into the snapshot folder yourself."
        )


def extract_archive(archive: Path, dest: Path, max_bytes: int = MAX_BYTES) -> Path:
    """Unpack ``archive`` into ``dest/<archive name>``; return that folder.

    Raises
    ------
    SnapshotError
        If the archive is unreadable, too large, or holds a member that would land outside the
        folder (absolute path, ``..``, a link leaving it, a device); nothing is left behind.

    """
    target = dest / archive.name
    partial = partial_path(target)  # a crashed run's is removed with ``dest`` by the next conversion
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _check(archive, members, max_bytes)
            partial.mkdir(parents=True)
            tar.extractall(partial, filter="data")
    except (
        tarfile.ReadError,
        tarfile.CompressionError,
        EOFError,
        zlib.error,
        lzma.LZMAError,
        OSError,
    ) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise SnapshotError(
            f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc}); copy it again from "
            "the source (compare its checksum), or unpack it into the snapshot yourself."
        ) from exc
    except tarfile.TarError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise SnapshotError(
            f"{archive}: refused to unpack ({type(exc).__name__}: {exc}). Archives may only hold plain "
            "files and folders below their own root; repack it, or unpack it into the snapshot yourself."
        ) from exc
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    logger.info("%s: unpacked %d member(s) into %s", archive, len(members), target)
    return target


def unpack_snapshot_archives(
    snapshot: Path, dest: Path, max_bytes: int = MAX_BYTES, refused: list[tuple[Path, str]] | None = None
) -> list[Path]:
    """Unpack every archive of ``snapshot`` into ``dest`` (replaced); return the unpacked folders.

    An archive that cannot be unpacked is added to ``refused`` with its message and the others
    are unpacked; without that list the first one raises.
    """
    archives = find_archives(snapshot)
    shutil.rmtree(dest, ignore_errors=True)
    if not archives:
        return []
    if len({a.name for a in archives}) != len(archives):
        raise SnapshotError(f"{snapshot}: two archives share a file name; rename one.")
    folders = []
    for archive in archives:
        try:
            folders.append(extract_archive(archive, dest, max_bytes))
        except SnapshotError as exc:
            if refused is None:
                raise
            refused.append((archive, str(exc)))
    return folders
