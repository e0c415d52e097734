"""Reports for people: report.md, report.html and the terminal tables, rendered from report.json."""
