"""Present: the report's sections, tables, figures and sentences, from the computed results."""
