"""The one size a run is shown with: its compressed file's, read from disk or encoded."""

from __future__ import annotations

from typing import Any


def file_table(run) -> dict[str, Any]:
    """The byte table of ``run``'s compressed file: the file itself when ``run`` was loaded
    from a ``.bsc``, else the file ``brainsurgeon export`` would write (encoded in memory);
    ``on_disk`` says which, ``where`` says it in words."""
    from . import encode, is_compressed_file, read

    if is_compressed_file(run.path):
        table, on_disk = read(run.path).table(), True
    else:
        table, on_disk = encode(run.model, config=run.config, metrics=run.metrics)[1], False
    out = {**table.to_dict(), "on_disk": on_disk}
    out["where"] = (
        f"{out['file_bytes']:,} bytes on disk"
        if on_disk
        else f"{out['file_bytes']:,} bytes as `brainsurgeon export` writes it"
    )
    return out


def layer_bytes(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per layer: its tensors' bytes in the file and bits per nonzero weight there."""
    out: dict[str, dict[str, Any]] = {}
    for row in table["rows"]:
        entry = out.setdefault(row["layer"], {"bytes": 0, "coded": 0, "nonzeros": 0})
        entry["bytes"] += row["bytes"]
        if row.get("bits_per_weight") is not None:
            entry["coded"] += row["codes"] + row["table"]
            entry["nonzeros"] += row["nonzeros"]
    for entry in out.values():
        nnz = entry.pop("nonzeros")
        coded = entry.pop("coded")
        entry["bits_per_weight"] = 8 * coded / nnz if nnz else None
    return out
