"""Snapshot content that arrives as ``.tar`` / ``.tar.gz`` archives, unpacked safely.

Archives are unpacked into the iteration's procdata folder (rawdata stays read-only). Before
anything is written every member is checked: plain files and folders only (no symbolic or hard
links, devices or FIFOs: a snapshot never needs them, and tarfile's ``data`` filter alone has a
record of link bypasses on Python 3.11), relative paths without ``..``, and bounded total size
and member count. Extraction then still runs with the ``data`` filter, into a temporary folder
that is only renamed into place when every member was written. A truncated or corrupt archive
is named with its cause. The archives given to ``iterseg.api.analyze`` pass the same checks
(:class:`ArchiveUse` only changes the error raised and the fixes named).
"""

from __future__ import annotations

import errno
import logging
import lzma
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from iterseg.errors import IterSegError, SnapshotError
from iterseg.paths import partial_path

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_BYTES = 50 * 2**30  # a generous bound on what one snapshot's archives may unpack to
MAX_MEMBERS = 500_000


@dataclass(frozen=True)
class ArchiveUse:
    """Who unpacks an archive: the error its refusals raise, and the fixes their messages offer.

    The checks are the same for every use; only what a message suggests differs (a snapshot's
    archive can be unpacked into the snapshot by hand, an archive given to ``iterseg.api.analyze``
    cannot).
    """

    error: type[IterSegError]
    holds: str  # what such archives hold, as in "<holds> need none" (of links and devices)
    too_many: str  # the fix for too many members
    too_big: str  # the fix for an archive that would unpack to too much
    by_hand: str  # appended to the fix of a corrupt or refused archive ("" for none)


#: Archives inside a snapshot folder (:func:`unpack_snapshot_archives`).
SNAPSHOT_ARCHIVES = ArchiveUse(
    error=SnapshotError,
    holds="snapshots",
    too_many="unpack it yourself",
    too_big="unpack it into the snapshot folder yourself",
    by_hand=", or unpack it into the snapshot yourself",
)


def find_archives(snapshot: Path) -> list[Path]:
    """Archives anywhere in the snapshot, in name order."""
    return sorted(p for p in snapshot.rglob("*") if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))


def check_members(
    archive: Path, members: list[tarfile.TarInfo], max_bytes: int, use: ArchiveUse = SNAPSHOT_ARCHIVES
) -> None:
    """Refuse ``archive`` unless every member is a plain file or folder below its root, within bounds.

    Raises
    ------
    IterSegError
        ``use.error`` (:class:`SnapshotError` for a snapshot's archive) naming ``archive``: for
        more than :data:`MAX_MEMBERS` members, a link, device or FIFO, a path with ``..`` or an
        absolute path, or more than ``max_bytes`` of content.

    """
    if len(members) > MAX_MEMBERS:
        raise use.error(f"{archive}: {len(members)} members, more than {MAX_MEMBERS}; {use.too_many}.")
    links = [m.name for m in members if not (m.isfile() or m.isdir())]
    if links:
        kinds = sorted(
            {
                "symbolic link" if m.issym() else "hard link" if m.islnk() else "device or FIFO"
                for m in members
                if m.name in links[:20]
            }
        )
        raise use.error(
            f"{archive}: holds {len(links)} member(s) that are not plain files or folders "
            f"({', '.join(kinds)}: {links[:3]}); {use.holds} need none: "
            "repack it with the files themselves (tar -h follows links)."
        )
    parents = [m.name for m in members if ".." in Path(m.name).parts]
    if parents:
        raise use.error(
            f"{archive}: member path(s) with '..' {parents[:3]}; repack with paths inside the archive."
        )
    absolute = [m.name for m in members if m.name.startswith(("/", "\\")) or ":" in m.name.split("/")[0]]
    if absolute:
        # the data filter would quietly strip the leading "/": refuse instead, the archive is odd
        raise use.error(f"{archive}: absolute member path(s) {absolute[:3]}; repack with relative paths.")
    total = sum(m.size for m in members if m.isfile())
    if total > max_bytes:
        raise use.error(
            f"{archive}: would unpack to {total / 2**30:.1f} GiB, more than the {max_bytes / 2**30:.1f} GiB "
            f"allowed; {use.too_big}."
        )


def extract_archive(
    archive: Path, dest: Path, max_bytes: int = MAX_BYTES, use: ArchiveUse = SNAPSHOT_ARCHIVES
) -> Path:
    """Unpack ``archive`` into ``dest/<archive name>``; return that folder.

    ``use`` says whose archive it is (default a snapshot's): the error raised and the fixes named.

    Raises
    ------
    IterSegError
        ``use.error`` (:class:`SnapshotError` for a snapshot's archive) if the archive is
        unreadable, too large, or holds a member that would land outside the folder (absolute
        path, ``..``, a link leaving it, a device); nothing is left behind.

    """
    target = dest / archive.name
    partial = partial_path(target)  # a crashed run's is removed with ``dest`` by the next conversion
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            check_members(archive, members, max_bytes, use)
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
        raise use.error(
            f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc}); copy it again from "
            f"the source (compare its checksum){use.by_hand}."
        ) from exc
    except tarfile.TarError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise use.error(
            f"{archive}: refused to unpack ({type(exc).__name__}: {exc}). Archives may only hold plain "
            f"files and folders below their own root; repack it{use.by_hand}."
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
