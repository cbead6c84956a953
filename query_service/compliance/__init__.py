"""The compliance report: model, builder, HTML, signing, provider config and log verification."""
