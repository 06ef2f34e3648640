"""Settings from USAGE_* environment variables (and .env), validated once at start-up."""

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, available_timezones

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pymongo.read_preferences import read_pref_mode_from_name

from etl.profiles import PROFILES, Profile, ProfileName

EMBEDDED = "embedded"
EMBEDDED_CACHE = "4G"
CACHE_MB = (256, 1024 * 1024)
# With the nightly run at 02:15, the data is at most about 26 hours old; 36 leaves it ten
# hours to be late before the freshness check fails.
DEFAULT_MAX_LAG_HOURS = 36.0
OBJECT_ID_HEX = re.compile(r"[0-9a-f]{24}")
# A document field, dotted for a nested one: no `$`, no empty part.
FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")

Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEKDAYS: tuple[Weekday, ...] = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)


@lru_cache
def known_zones() -> frozenset[str]:
    """IANA zone names with data here; not `posixrules`, `right/...` nor the machine's `localtime`.

    Those open in Python but are not zones the database server knows, so a run would fail.
    """
    return frozenset(available_timezones() - {"localtime"} | {"UTC"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="USAGE_", env_file=".env", extra="ignore")

    mongodb_uri: str = Field(
        default=EMBEDDED,
        description="MongoDB URI, or 'embedded' for the bundled server storing under data_dir",
    )
    data_dir: Path = Path(".data")
    # The embedded server's storage cache: a bound, not an allocation. A transaction's writes
    # must fit in a fifth of it: with 1G a day of 100,000 groups failed, with 4G it is
    # replaced in one transaction (`python -m tests.bench.big_day`).
    embedded_cache: str = EMBEDDED_CACHE
    source_db: str = "tiledesk"
    source_profile: ProfileName = "deployment"
    rollup_db: str | None = None
    timezone: str = "UTC"
    lookback_days: int = Field(default=3, ge=0, le=366)
    billable_status: int = 1000
    billable_min_depth: int = Field(default=2, description="billable when depth > this")
    exclude_test_mode: bool = True
    internal_org_ids: Annotated[list[str], NoDecode] = []
    # A conversation's end user: the first of these fields holding an ObjectId or a string.
    user_fields: Annotated[list[str], NoDecode] = ["lead", "requester"]
    week_start: Weekday = "monday"
    # None: the profile's (`organizations`, or `projects` for vanilla Tiledesk).
    org_names_collection: str | None = None
    agent_names_collection: str = "faq_kbs"
    server_selection_timeout_ms: int = Field(default=5000, ge=100)
    # How long the API waits for one reply of the database before answering 503: a stalled
    # server or network must not hold requests forever. The rollup's commands wait as long as
    # the database works (a backfill's aggregation may take minutes).
    api_read_timeout_ms: int = Field(default=5000, ge=100)
    read_preference: str = "secondaryPreferred"
    lock_wait_seconds: float = Field(default=30.0, allow_inf_nan=False, ge=0, le=86_400)
    lease_seconds: float = Field(default=300.0, allow_inf_nan=False, ge=5, le=86_400)
    max_range_days: int = Field(default=366, ge=1)
    cache_entries: int = Field(default=512, ge=0)
    # Rows replaced in one transaction, at most (a single day is never split).
    transaction_rows: int = Field(default=20_000, ge=1)
    # How often the API looks for a newer completed run (and re-checks a cached key): at most
    # an hour, so that a revoked key is refused within two.
    cache_check_seconds: float = Field(default=2.0, allow_inf_nan=False, ge=0, le=3600)
    # Operability: the freshness threshold, logs and metrics (README, "Monitoring").
    max_lag_hours: float = Field(
        default=DEFAULT_MAX_LAG_HOURS, allow_inf_nan=False, gt=0, le=24 * 366
    )
    log_format: Literal["text", "json"] | None = None
    metrics_token: SecretStr | None = None
    metrics_textfile: Path | None = None
    pushgateway_url: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in known_zones():
            raise ValueError(f"unknown IANA time zone {value!r}")
        return value

    @field_validator("embedded_cache")
    @classmethod
    def _cache_size(cls, value: str) -> str:
        found = re.fullmatch(r"\s*([0-9]+)\s*([MG])B?\s*", value, re.IGNORECASE)
        if found is None:
            raise ValueError("a size such as 512M or 4G")
        size, unit = int(found[1]), found[2].upper()
        megabytes = size * (1024 if unit == "G" else 1)
        # Below the floor the server stalls on its first transactions rather than failing
        # (1M did); far above the ceiling it refuses to start (16384G did).
        if not CACHE_MB[0] <= megabytes <= CACHE_MB[1]:
            raise ValueError("between 256M and 1024G")
        return f"{size}{unit}"

    @field_validator("metrics_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("use at least 16 characters")
        return value

    @field_validator("internal_org_ids", "user_fields", mode="before")
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not a JSON array: {exc.msg}") from None
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("internal_org_ids")
    @classmethod
    def _hex_ids(cls, value: list[str]) -> list[str]:
        ids = [item.lower() for item in value]
        bad = [item for item in ids if not OBJECT_ID_HEX.fullmatch(item)]
        if bad:
            raise ValueError(f"not an ObjectId hex string: {bad[0]!r}")
        return ids

    @field_validator("user_fields")
    @classmethod
    def _field_paths(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one field")
        value = [item.strip() for item in value]
        bad = [item for item in value if not FIELD_PATH.fullmatch(item)]
        if bad:
            raise ValueError(f"not a field name: {bad[0]!r}")
        if len(set(value)) != len(value):
            raise ValueError("a field is named twice")
        return value

    @field_validator("read_preference")
    @classmethod
    def _known_read_preference(cls, value: str) -> str:
        try:
            read_pref_mode_from_name(value)
        except (ValueError, KeyError):
            raise ValueError(f"unknown read preference {value!r}") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def profile(self) -> Profile:
        return PROFILES[self.source_profile]

    @property
    def org_names(self) -> str:
        """The collection organization names are read from."""
        return self.org_names_collection or self.profile.org_names

    @property
    def rollup_db_name(self) -> str:
        return self.rollup_db or self.source_db

    @property
    def week_start_index(self) -> int:
        """Python weekday number (Monday 0) that weeks start on."""
        return WEEKDAYS.index(self.week_start)

    def billable_filter(self) -> dict[str, Any]:
        """The filter values a run records, so a change of them is visible."""
        return {
            "status": self.billable_status,
            "depth_gt": self.billable_min_depth,
            "exclude_test_mode": self.exclude_test_mode,
        }


class SettingsError(Exception):
    """A setting has an invalid value; the message names it in one line."""


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning a validation error into one line naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "USAGE_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise SettingsError(f"invalid setting {name}: {first['msg']}") from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
