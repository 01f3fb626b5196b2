"""Billing: invoices, enforcement, and the payment-processor seam (Stripe or offline)."""
