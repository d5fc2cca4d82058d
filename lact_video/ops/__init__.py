"""Pure tensor ops: fast paths with their plain references beside them."""
