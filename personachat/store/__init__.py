"""Everything that speaks Redis: key names, scripts, transactions, and the stores built on them."""
