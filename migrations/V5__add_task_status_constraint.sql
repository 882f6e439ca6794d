-- Only known statuses; 'todo' is the default.
ALTER TABLE tasks
    ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('todo', 'doing', 'blocked', 'done'));
