CREATE TABLE tasks (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id   bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    assignee_id  bigint REFERENCES users (id) ON DELETE SET NULL,
    title        text NOT NULL,
    status       text NOT NULL DEFAULT 'todo',
    due_on       date,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
