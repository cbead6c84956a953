"""The evidence report (EU AI Act): model, builder, HTML, signing, provider config, log and
derived-table verification, witness and producer keys."""
