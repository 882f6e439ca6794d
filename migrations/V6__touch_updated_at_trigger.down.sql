DROP TRIGGER tasks_touch_updated_at ON tasks;
DROP FUNCTION touch_updated_at();
