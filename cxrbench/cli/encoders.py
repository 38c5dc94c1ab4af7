"""`cxrbench encoders`: the encoder families, the input presets and the known public encoders."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cxrbench.cli.console import console
from cxrbench.cli.errors import reports_user_errors


@reports_user_errors
def encoders_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List encoder families, preprocessing presets and known public encoders (nothing is downloaded)."""
    import json

    from cxrbench.encoders import list_families
    from cxrbench.encoders.catalogue import KNOWN_ENCODERS
    from cxrbench.encoders.presets import PRESETS, describe_preset

    families = {f.name: f for f in list_families()}
    if as_json:
        payload = {
            "families": {
                name: {"architectures": list(f.variants), "default_preset": f.default_preset}
                for name, f in families.items()
            },
            "presets": {name: p.describe() for name, p in PRESETS.items()},
            "known_encoders": [{**e.as_dict(), "supported": e.family in families} for e in KNOWN_ENCODERS],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table(title="encoder families (--arch; auto-detected from the checkpoint)")
    for col in ("family", "architectures", "default preset"):
        table.add_column(col)
    for name, family in families.items():
        table.add_row(name, ", ".join(family.variants), family.default_preset or "ask (--preset)")
    console.print(table)
    table = Table(title="input presets (--preset)")
    for col in ("preset", "what the encoder gets"):
        table.add_column(col)
    for name, preset in PRESETS.items():
        table.add_row(name, describe_preset(preset).split(": ", 1)[1])
    console.print(table)
    table = Table(title="known public encoders (download them yourself; cxrbench never downloads)")
    for col in ("encoder", "architecture", "published as", "evaluate with", "licence", "where"):
        table.add_column(col, overflow="fold")
    for enc in KNOWN_ENCODERS:
        status = enc.preset if enc.family in families else f"needs the {enc.family} family"
        table.add_row(enc.name, enc.architecture, enc.published_as, status, enc.licence, enc.source)
    console.print(table)
