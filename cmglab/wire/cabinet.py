"""Microsoft cabinet files (MS-CAB), the subset the lab needs: uncompressed, one folder. The site packs
the client's ccmsetup.cab (ccmsetup.xml inside) with `write_cab`; ccmsetup reads it back with `read_cab`."""

from __future__ import annotations

import struct


def write_cab(files: dict[str, bytes]) -> bytes:
    """An uncompressed single-folder cabinet (MS-CAB: CFHEADER, CFFOLDER, CFFILE..., CFDATA...)."""
    names = list(files)
    data = b"".join(files[n] for n in names)
    blocks = [data[i : i + 32768] for i in range(0, len(data), 32768)] or [b""]
    cffiles = b""
    offset = 0
    for n in names:
        # cbFile, uoffFolderStart, iFolder, date (2024-01-01), time, attribs, name
        cffiles += struct.pack("<IIHHHH", len(files[n]), offset, 0, (44 << 9) | (1 << 5) | 1, 0, 0x20)
        cffiles += n.encode("ascii") + b"\x00"
        offset += len(files[n])
    header_size, folder_size = 36, 8
    coff_files = header_size + folder_size
    first_data = coff_files + len(cffiles)
    cfdata = b"".join(struct.pack("<IHH", 0, len(b), len(b)) + b for b in blocks)
    total = first_data + len(cfdata)
    header = b"MSCF" + struct.pack("<IIIIIBBHHHHH", 0, total, 0, coff_files, 0, 3, 1, 1, len(names), 0, 0x4C4D, 0)
    folder = struct.pack("<IHH", first_data, len(blocks), 0)  # typeCompress 0 = none
    return header + folder + cffiles + cfdata


def read_cab(blob: bytes) -> dict[str, bytes]:
    """Files of an uncompressed single-folder cabinet (MS-CAB: CFHEADER, CFFOLDER, CFFILE, CFDATA)."""
    if blob[:4] != b"MSCF":
        raise ValueError("not a cabinet (no MSCF signature)")
    coff_files = struct.unpack_from("<I", blob, 16)[0]
    n_files = struct.unpack_from("<H", blob, 28)[0]
    first_data, n_blocks, compression = struct.unpack_from("<IHH", blob, 36)
    if compression != 0:
        raise ValueError("compressed cabinets are not supported")
    pos, entries = coff_files, []
    for _ in range(n_files):
        size, off = struct.unpack_from("<II", blob, pos)
        end = blob.index(b"\x00", pos + 16)
        entries.append((blob[pos + 16 : end].decode("ascii"), size, off))
        pos = end + 1
    data, pos = b"", first_data
    for _ in range(n_blocks):
        _, cb, _ = struct.unpack_from("<IHH", blob, pos)
        data += blob[pos + 8 : pos + 8 + cb]
        pos += 8 + cb
    return {name: data[off : off + size] for name, size, off in entries}
