"""Renderings: terminal tables, HTML/Markdown/JSON/CSV reports, plots, the CI gate."""
