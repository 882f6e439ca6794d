DROP INDEX tasks_project_status_idx;
DROP INDEX tasks_assignee_idx;
DROP INDEX projects_owner_idx;
