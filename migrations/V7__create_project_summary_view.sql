CREATE VIEW project_summary AS
SELECT p.id,
       p.name,
       count(t.id)                                  AS tasks,
       count(t.id) FILTER (WHERE t.status = 'done') AS done,
       max(t.updated_at)                            AS last_activity
FROM projects p
LEFT JOIN tasks t ON t.project_id = p.id
WHERE NOT p.archived
GROUP BY p.id, p.name;
