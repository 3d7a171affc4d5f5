"""See ARCHITECTURE.md: installed as mmx.backends."""
