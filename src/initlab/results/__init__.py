"""What training produced, judged: evaluation on the test split, statistics, verification."""
