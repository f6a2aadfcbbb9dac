"The operator's vocabulary. Every op here is imported into the console's namespace."
