"""`gdflow alerts --block TYPE/NAME`: install the automations of
flows/automations/gdflow-alerts.yaml on the Prefect server, each sending through one
notification block.

The file is Prefect's own automation format (`prefect automation create --from-file` reads
it once the block's id replaces `{{ block }}`); installing replaces automations of the same
names, so running it again after editing the file updates them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdflow.config.errors import GdflowError

#: The shipped automation definitions.
AUTOMATIONS_FILE = Path(__file__).resolve().parent / "automations" / "gdflow-alerts.yaml"
#: Where the block's id goes in the file.
BLOCK_PLACEHOLDER = "{{ block }}"


def definitions(path: Path = AUTOMATIONS_FILE) -> list[dict[str, Any]]:
    """The automations of the file, as dictionaries."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise GdflowError(f"cannot read the automations file {path}: {exc}") from None
    automations = loaded.get("automations") if isinstance(loaded, dict) else None
    if not isinstance(automations, list) or not automations:
        raise GdflowError(f"{path} holds no `automations:` list")
    return automations


def install(block: str, path: Path = AUTOMATIONS_FILE) -> list[str]:
    """Create the file's automations with `block` (`block-type-slug/block-name`) as their
    notification block, replacing automations of the same names; return their names."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore
    from prefect.exceptions import ObjectNotFound

    slug, _, name = block.partition("/")
    if not slug or not name:
        raise GdflowError(
            f"--block {block!r}: give the block as TYPE/NAME, e.g. slack-webhook/ops "
            "(prefect block ls lists them)"
        )
    installed = []
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name=name, block_type_slug=slug)
        except ObjectNotFound:
            raise GdflowError(
                f"--block {block}: no such block on the Prefect server; create it in the UI "
                "(Blocks) or with its Python class's .save(), then run this again"
            ) from None
        for item in definitions(path):
            for action in item.get("actions") or []:
                if action.get("block_document_id") == BLOCK_PLACEHOLDER:
                    action["block_document_id"] = str(document.id)
            automation = AutomationCore.model_validate(item)
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            client.create_automation(automation)
            installed.append(automation.name)
    return installed
