"""The billing domain: practices, clients, the calendar, invoices and payments.

Nothing in this package imports AWS, Lambda or HTTP code; storage and gateways are passed in.
"""
