"""Source profiles: where each concept of a conversation is read from, as one unit.

`deployment` is the deployment described in the domain contract (`id_organization`, `depth`,
`isTestMode`, `attributes.bot_id`); `tiledesk` is vanilla Tiledesk as its server writes it
(`id_project`, messages in `messages`, `draft`, `snapshot.department.id_bot`).
"""

from dataclasses import dataclass
from typing import Literal

ProfileName = Literal["deployment", "tiledesk"]


@dataclass(frozen=True)
class Profile:
    name: ProfileName
    organization: str  # the field holding the organization's id
    test_flag: str  # a conversation with this field true is a test
    # "depth": the request's own field; "messages": counted in the `messages` collection.
    length: Literal["depth", "messages"]
    org_names: str  # the collection organization names are read from, by default
    # How the definition describes the agent and the skip rules: a change of either is a
    # change of the stored numbers' meaning.
    attribution: str
    skip_rules: str


DEPLOYMENT = Profile(
    name="deployment",
    organization="id_organization",
    test_flag="isTestMode",
    length="depth",
    org_names="organizations",
    attribution="attributes.bot_id, else unattributed",
    skip_rules="no_organization, bad_created_at, bad_depth, depth_out_of_range",
)

TILEDESK = Profile(
    name="tiledesk",
    organization="id_project",
    test_flag="draft",
    length="messages",
    org_names="projects",
    attribution="snapshot.department.id_bot, else the first of participantsBots, else unattributed",
    # A count of messages is always a whole number: only the placing rules can skip.
    skip_rules="no_organization, bad_created_at",
)

PROFILES: dict[ProfileName, Profile] = {profile.name: profile for profile in (DEPLOYMENT, TILEDESK)}

# The messages a vanilla conversation's length counts: all but the system's notices.
# Tiledesk writes those ("Chat closed", "A new support request has been assigned to …") with
# sender `system` and an `info` subtype (`info`, `info/support`); the visitor's, the bot's
# and the human agent's messages carry neither.
SYSTEM_SENDER = "system"
INFO_SUBTYPE = "^info"
