"""Stage 7 — renderings: terminal tables, HTML/Markdown/JSON/CSV reports, plots, the CI gate."""
