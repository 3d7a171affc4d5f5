"""See ARCHITECTURE.md: installed as mmx.convert."""
