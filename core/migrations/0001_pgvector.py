"""pgvector, when the PostgreSQL server has it: knowledge bases with an embedding model then
search by vector similarity too (knowledge.vectors). A server without it gets nothing here and
full-text search alone; README, "Vector search", says how to add it later (install the package,
then `CREATE EXTENSION vector;` or migrate again).

The extension lives in the public schema, which every account's search path ends with, so its
type and operators resolve in every account's schema. A role that may not create extensions
(not a superuser; pgvector is not a trusted extension) gets a warning instead of a failed
migration. Plain SQL, run on the public schema only (core is a shared app)."""

from django.db import migrations

CREATE_IF_AVAILABLE = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')
       AND NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS vector SCHEMA public;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'pgvector is installed on the server but this role may not create '
                'the extension: run CREATE EXTENSION vector; as a superuser for vector search';
        END;
    END IF;
END
$$;
"""


class Migration(migrations.Migration):
    operations = [migrations.RunSQL(CREATE_IF_AVAILABLE, reverse_sql=migrations.RunSQL.noop)]
