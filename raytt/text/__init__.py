"""Text two-towers: query text against passage text (BEIR folders, pairs files, Debian descriptions)."""
