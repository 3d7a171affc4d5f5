"""See ARCHITECTURE.md: installed as mmx.models."""
