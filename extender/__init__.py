"""kube-scheduler extender: filter, prioritize, bind and preempt over HTTP (issue 3)."""
