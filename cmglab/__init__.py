"""cmglab: an Entra ID + ConfigMgr CMG/MP lab, in one namespace (see docs/architecture.md)."""
