DROP VIEW project_summary;
