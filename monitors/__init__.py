"""monitors: see README; filled by later issues."""
