"""What calls leave behind: messages callers left."""
