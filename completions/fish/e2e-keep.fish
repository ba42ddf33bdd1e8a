complete -c e2e-keep -l into -d 'Where the copies go (outside STORE; on the same XFS or btrfs filesystem for reflinks)' -r -F
complete -c e2e-keep -l user -d 'The client\'s account: no copy while a process of it runs (its session is still open)' -r
complete -c e2e-keep -l settle -d 'Seconds a container must be unchanged before it is copied' -r
complete -c e2e-keep -l alert-after -d 'Exit 4 with a line at priority err when a container\'s newest copy is older than this (a client that has not completed a session), e.g. 2d; 0 = never' -r
complete -c e2e-keep -l keep-last -d 'Retention of the copies, by the server\'s clock (as [retention] in e2e-backup.toml(5)); none given keeps every copy' -r
complete -c e2e-keep -l keep-hourly -r
complete -c e2e-keep -l keep-daily -r
complete -c e2e-keep -l keep-weekly -r
complete -c e2e-keep -l keep-monthly -r
complete -c e2e-keep -l keep-yearly -r
complete -c e2e-keep -l full-copy -d 'Copy whole where a reflink is not possible (writes the container\'s allocated size every time)'
complete -c e2e-keep -l dry-run -d 'Print the commands that would run, as a script; run none'
complete -c e2e-keep -s v -l verbose -d 'Also show the output of the commands run'
complete -c e2e-keep -s q -l quiet -d 'Only warnings and errors on stderr'
complete -c e2e-keep -s h -l help -d 'Print help (see more with \'--help\')'
complete -c e2e-keep -s V -l version -d 'Print version'
