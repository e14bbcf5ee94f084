"""Provider plugins: the contract (`base`), how they are found (`registry`), and the two shipped
providers (`reference`, `noqos`)."""
