"""`kubectl filterrelease`: FilterReleases for people at a terminal (list, tree, wait, requests,
lint) and the dashboard's launcher. Text is rendered by pure functions (views, wait, lint); only
cli.py talks to the cluster, through the person's own kube Session."""
