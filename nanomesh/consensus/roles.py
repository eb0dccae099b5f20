"""Deprecated alias of `nanomesh.consensus.role_manager` (the trio shell) and
`nanomesh.consensus.role_core` (the pure decisions), kept for one merge cycle
so branches written against the old name still import. Import from those two
modules; this one goes away in the layout pass of issue 14."""

from nanomesh.consensus.role_core import TRANSITIONS as TRANSITIONS
from nanomesh.consensus.role_core import RaftRole as RaftRole
from nanomesh.consensus.role_core import RoleConfig as RoleConfig
from nanomesh.consensus.role_core import epoch_from_profiles as epoch_from_profiles
from nanomesh.consensus.role_core import voters_from_profiles as voters_from_profiles
from nanomesh.consensus.role_manager import ROLE_FILE as ROLE_FILE
from nanomesh.consensus.role_manager import RaftRoleManager as RaftRoleManager
from nanomesh.consensus.role_manager import raft_profile_section as raft_profile_section
from nanomesh.errors import IllegalTransition as IllegalTransition
