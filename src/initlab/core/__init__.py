"""What every layer stands on: atomic files and readers (io), the numeric platform (machine), signals."""
