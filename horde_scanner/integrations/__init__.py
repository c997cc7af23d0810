"""The peers we talk to: pict-rs's internal API, webhooks, late-positive enforcement."""
