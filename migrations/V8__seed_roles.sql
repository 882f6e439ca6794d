-- Roles every workspace starts with (a data migration).
CREATE TABLE roles (
    name        text PRIMARY KEY,
    description text NOT NULL,
    can_admin   boolean NOT NULL DEFAULT false
);
INSERT INTO roles (name, description, can_admin) VALUES
    ('owner',  'Full control, including billing', true),
    ('member', 'Works on projects and tasks',     false),
    ('viewer', 'Read-only access; can''t edit',   false);
ALTER TABLE users ADD COLUMN role text NOT NULL DEFAULT 'member' REFERENCES roles (name);
