"""``params.yaml``: its schema, the variants it names, and the paths every stage reads and writes."""
