"""The markdown report: tables, figures and prose, from the files the stages wrote."""
