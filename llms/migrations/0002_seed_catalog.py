"""The two provider APIs Palaver speaks, as starting catalog entries operators can edit."""

from django.db import migrations

PROVIDERS = [
    {
        "name": "OpenAI",
        "kind": "openai",
        "base_url": "https://api.openai.com/v1",
        "known_models": ["gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini"],
    },
    {
        "name": "Anthropic",
        "kind": "anthropic",
        "base_url": "https://api.anthropic.com",
        "known_models": ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"],
    },
]


def seed(apps, schema_editor):
    LLM = apps.get_model("llms", "LLM")
    for provider in PROVIDERS:
        LLM.objects.get_or_create(name=provider["name"], defaults=provider)


class Migration(migrations.Migration):
    dependencies = [("llms", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
