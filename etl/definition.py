"""The rollup definition: everything that decides a stored number, and its fingerprint."""

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from etl.profiles import DEPLOYMENT
from etl.settings import Settings

# Raised whenever the pipeline's meaning changes, so rows computed before cannot mix with
# rows computed after. 2: agent ids normalized like organization ids; depths that are not
# whole numbers skipped as bad_depth. The tiledesk profile's rules (which messages count)
# are part of this meaning too. 3: day rows count distinct end users (`users`, `users_hll`),
# and every level holds their union.
PIPELINE_VERSION = 3
# The first version whose generations have the organization levels (usage_org_daily,
# usage_org_monthly); a rollup adopted from before is read from its agent rows until rebuilt.
LATTICE_VERSION = 2
# The first version whose generations have users: a generation from before has no sketches.
USERS_VERSION = 3
ATTRIBUTION = DEPLOYMENT.attribution
SKIP_RULES = DEPLOYMENT.skip_rules

LABELS = {
    "timezone": "timezone",
    "billable_status": "billable status",
    "billable_min_depth": "minimum depth",
    "exclude_test_mode": "exclude test mode",
    "profile": "source profile",
    "attribution": "attribution",
    "skip_rules": "skip rules",
    "version": "pipeline version",
    "users_from": "user fields",
}


@dataclass(frozen=True)
class Definition:
    timezone: str
    billable_status: int
    billable_min_depth: int
    exclude_test_mode: bool
    profile: str = "deployment"
    attribution: str = ATTRIBUTION
    skip_rules: str = SKIP_RULES
    version: int = PIPELINE_VERSION
    # The fields a conversation's end user is read from, in order (USAGE_USER_FIELDS). None in
    # a definition stored before users were counted.
    users_from: tuple[str, ...] | None = None

    def _fields(self) -> dict[str, Any]:
        """The fields that decide the fingerprint: a definition stored before `users_from`
        existed keeps the fingerprint it was stored with."""
        values = asdict(self)
        if values["users_from"] is None:
            del values["users_from"]
        else:
            values["users_from"] = list(values["users_from"])
        return values

    @property
    def fingerprint(self) -> str:
        text = json.dumps(self._fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def as_doc(self) -> dict[str, Any]:
        return {**self._fields(), "fingerprint": self.fingerprint}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Definition":
        names = {f.name for f in fields(cls)}
        values = {key: value for key, value in doc.items() if key in names}
        if values.get("users_from") is not None:
            values["users_from"] = tuple(values["users_from"])
        return cls(**values)


def of_settings(settings: Settings) -> Definition:
    """The definition the current settings ask for."""
    return Definition(
        timezone=settings.timezone,
        billable_status=settings.billable_status,
        billable_min_depth=settings.billable_min_depth,
        exclude_test_mode=settings.exclude_test_mode,
        profile=settings.source_profile,
        attribution=settings.profile.attribution,
        skip_rules=settings.profile.skip_rules,
        users_from=tuple(settings.user_fields),
    )


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ", ".join(value)
    return str(value)


def differences(stored: Definition, wanted: Definition) -> list[str]:
    """One `name: old -> new` per field that differs."""
    old, new = asdict(stored), asdict(wanted)
    return [
        f"{LABELS[name]}: {_shown(old[name])} -> {_shown(new[name])}"
        for name in old
        if old[name] != new[name]
    ]


class DefinitionMismatch(Exception):
    """The settings ask for another definition than the stored rollup's; nothing was written."""

    def __init__(self, stored: Definition, wanted: Definition) -> None:
        self.changes = differences(stored, wanted)
        super().__init__(
            "the settings differ from the stored rollup's definition ("
            + "; ".join(self.changes)
            + "): run `usage rebuild` to rebuild it under the new settings, "
            "or restore the settings"
        )
