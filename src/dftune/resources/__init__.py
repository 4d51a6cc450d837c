"""Package data: FF++ official split files (see README.md here)."""
