# forge dev image: login shells get the container's environment back (/etc/profile resets
# PATH). The entrypoint saves it in ~/.ssh/environment, which sshd also reads.
if [ -r "$HOME/.ssh/environment" ]; then
    while IFS= read -r forge_line; do
        case $forge_line in
            [A-Za-z_]*=*) export "$forge_line" ;;
        esac
    done < "$HOME/.ssh/environment"
    unset forge_line
fi
